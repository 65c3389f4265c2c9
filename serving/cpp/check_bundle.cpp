// check_bundle: load an export bundle's TorchScript artifacts with libtorch (no
// Python, no torchrec) and run the bundle's test vectors through them.
//
//   check_bundle BUNDLE_DIR [ARTIFACT ...]
//
// ARTIFACT defaults to every artifact in BUNDLE_DIR/test_vectors.pt (user tower,
// item tower, ranker) and the retrieval case; "retrieval" names that case. test_vectors.pt is a torch.save of
//   {"tolerance": float, "artifacts": {name: {"file": str,
//                                              "inputs": {input: Tensor},
//                                              "output": Tensor}}}
// which torch::jit::pickle_load reads. For each artifact: the output must match
// within the tolerance, and an input of the wrong dtype must be refused with an
// error that names the input. Where the vectors hold a "retrieval" case
// ({"query", "k", "rows", "item_ids", "scores"}), the query artifact's output is
// searched exactly (inner product) over item_embeddings.npy, and the top k must
// give the recorded scores, corpus rows and, through item_ids.npy, raw item ids
// (items whose scores are within twice the score tolerance may swap). Exit status 0 when all pass, 1 on any
// mismatch, 2 on a usage or loading error.
#include <ATen/Parallel.h>
#include <torch/script.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

namespace {

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

c10::Dict<std::string, at::Tensor> tensor_dict(const c10::impl::GenericDict& generic) {
  c10::Dict<std::string, at::Tensor> out;
  for (const auto& kv : generic) out.insert(kv.key().toStringRef(), kv.value().toTensor());
  return out;
}

// Runs one artifact on its test vector; returns the number of failed checks.
int check_artifact(const std::string& bundle, const std::string& name,
                   const c10::impl::GenericDict& vector, double tolerance) {
  const std::string file = vector.at("file").toStringRef();
  torch::jit::Module module = torch::jit::load(bundle + "/" + file);
  module.eval();
  torch::NoGradGuard no_grad;
  auto inputs = tensor_dict(vector.at("inputs").toGenericDict());
  at::Tensor want = vector.at("output").toTensor();
  at::Tensor got = module.forward({inputs}).toTensor();
  int failures = 0;
  if (got.sizes() != want.sizes()) {
    std::cout << "FAIL " << name << ": output shape " << got.sizes() << ", want " << want.sizes()
              << "\n";
    return 1;
  }
  const double diff = (got - want).abs().max().item<double>();
  const bool close = diff <= tolerance;
  failures += close ? 0 : 1;
  std::cout << (close ? "ok   " : "FAIL ") << name << " (" << file << "): batch " << got.size(0)
            << ", max abs diff " << diff << " (tolerance " << tolerance << ")\n";

  // The artifact itself refuses a wrong dtype, naming the input.
  const std::string first = inputs.begin()->key();
  auto bad = inputs.copy();
  const at::Tensor& x = inputs.at(first);
  bad.insert_or_assign(first, x.to(x.scalar_type() == at::kFloat ? at::kLong : at::kFloat));
  try {
    module.forward({bad});
    std::cout << "FAIL " << name << ": accepted input '" << first << "' with the wrong dtype\n";
    failures += 1;
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    const bool named = msg.find("'" + first + "'") != std::string::npos;
    failures += named ? 0 : 1;
    std::cout << (named ? "ok   " : "FAIL ") << name << ": wrong dtype for '" << first
              << "' refused" << (named ? "" : " without naming the input") << "\n";
  }
  return failures;
}

// Reads a C-order little-endian .npy of float32 ("<f4") or int64 ("<i8").
at::Tensor load_npy(const std::string& path) {
  const std::vector<char> raw = read_file(path);
  if (raw.size() < 10 || std::memcmp(raw.data(), "\x93NUMPY", 6) != 0)
    throw std::runtime_error(path + ": not a .npy file");
  const int major = static_cast<unsigned char>(raw[6]);
  size_t header_len = 0, start = 0;
  if (major == 1) {
    header_len = static_cast<unsigned char>(raw[8]) | (static_cast<unsigned char>(raw[9]) << 8);
    start = 10;
  } else {
    if (raw.size() < 12) throw std::runtime_error(path + ": truncated .npy header");
    for (int i = 0; i < 4; ++i) header_len |= size_t(static_cast<unsigned char>(raw[8 + i])) << (8 * i);
    start = 12;
  }
  if (raw.size() < start + header_len) throw std::runtime_error(path + ": truncated .npy header");
  const std::string header(raw.data() + start, header_len);
  if (header.find("'fortran_order': False") == std::string::npos)
    throw std::runtime_error(path + ": only C-order arrays are read");
  at::ScalarType dtype;
  if (header.find("'<f4'") != std::string::npos) {
    dtype = at::kFloat;
  } else if (header.find("'<i8'") != std::string::npos) {
    dtype = at::kLong;
  } else {
    throw std::runtime_error(path + ": dtype is not <f4 or <i8: " + header);
  }
  const size_t open = header.find("'shape': (");
  if (open == std::string::npos) throw std::runtime_error(path + ": no shape in " + header);
  std::vector<int64_t> shape;
  const char* p = header.c_str() + open + 10;
  while (*p && *p != ')') {
    if (*p >= '0' && *p <= '9') {
      char* end = nullptr;
      shape.push_back(std::strtoll(p, &end, 10));
      p = end;
    } else {
      ++p;
    }
  }
  const size_t offset = start + header_len;
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(dtype));
  const size_t bytes = out.numel() * out.element_size();
  if (raw.size() - offset != bytes) throw std::runtime_error(path + ": data size does not match the shape");
  std::memcpy(out.data_ptr(), raw.data() + offset, bytes);
  return out;
}

// The retrieval case; returns the number of failed checks.
int check_retrieval(const std::string& bundle, const c10::impl::GenericDict& top, double tolerance) {
  auto retrieval = top.at("retrieval").toGenericDict();
  const std::string query = retrieval.at("query").toStringRef();
  const int64_t k = retrieval.at("k").toInt();
  at::Tensor want_rows = retrieval.at("rows").toTensor();
  at::Tensor want_ids = retrieval.at("item_ids").toTensor();
  at::Tensor want = retrieval.at("scores").toTensor().to(at::kDouble);
  auto vector = top.at("artifacts").toGenericDict().at(query).toGenericDict();
  torch::jit::Module module = torch::jit::load(bundle + "/" + vector.at("file").toStringRef());
  module.eval();
  torch::NoGradGuard no_grad;
  at::Tensor q = module.forward({tensor_dict(vector.at("inputs").toGenericDict())}).toTensor();
  at::Tensor emb = load_npy(bundle + "/item_embeddings.npy");
  at::Tensor ids = load_npy(bundle + "/item_ids.npy");
  // exact search: scores [B, N] in double, top k + 1 (the next one guards a tie at place k)
  at::Tensor scores = at::matmul(q.to(at::kDouble), emb.to(at::kDouble).t());
  const int64_t n = std::min<int64_t>(k + 1, scores.size(1));
  auto [got, rows] = at::topk(scores, n, 1, true, true);
  // a query off by the tolerance per element moves a score by at most this much
  const double tol = tolerance * std::sqrt(static_cast<double>(emb.size(1))) *
                     std::max(emb.norm(2, 1).max().item<double>(), 1.0);
  const double diff = (got.narrow(1, 0, k) - want).abs().max().item<double>();
  int failures = diff <= tol ? 0 : 1;  // (a NaN fails too)
  // Items whose recorded scores are within 2 tol may swap places (each may move
  // by tol); every other place must hold the recorded corpus row and raw id.
  int64_t checked = 0, wrong_rows = 0, wrong_ids = 0;
  auto w = want.accessor<double, 2>();
  auto g = got.accessor<double, 2>();
  auto r = rows.accessor<int64_t, 2>();
  auto wr = want_rows.accessor<int64_t, 2>();
  auto wi = want_ids.accessor<int64_t, 2>();
  auto raw_ids = ids.accessor<int64_t, 1>();
  for (int64_t b = 0; b < want.size(0); ++b) {
    for (int64_t j = 0; j < k; ++j) {
      const double before = j > 0 ? w[b][j - 1] : INFINITY;
      const double after = j + 1 < k ? w[b][j + 1] : (n > k ? g[b][k] : -INFINITY);
      if (before - w[b][j] > 2 * tol && w[b][j] - after > 2 * tol) {
        ++checked;
        if (r[b][j] != wr[b][j]) ++wrong_rows;
        if (raw_ids[r[b][j]] != wi[b][j]) ++wrong_ids;
      }
    }
  }
  failures += (wrong_rows ? 1 : 0) + (wrong_ids ? 1 : 0);
  std::cout << (failures ? "FAIL " : "ok   ") << "retrieval: top " << k << " of " << emb.size(0)
            << " items for " << want.size(0) << " " << query << " outputs, max score diff " << diff
            << " (tolerance " << tol << "); of " << checked << " places apart from their neighbours, "
            << wrong_rows << " hold another corpus row, " << wrong_ids << " another raw id\n";
  return failures;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: " << argv[0] << " BUNDLE_DIR [ARTIFACT ...]\n";
    return 2;
  }
  const std::string bundle = argv[1];
  std::vector<std::string> wanted(argv + 2, argv + argc);
  int failures = 0;
  try {
    at::set_num_threads(1);
    torch::IValue root = torch::jit::pickle_load(read_file(bundle + "/test_vectors.pt"));
    auto top = root.toGenericDict();
    const double tolerance = top.at("tolerance").toDouble();
    auto artifacts = top.at("artifacts").toGenericDict();
    int ran = 0;
    for (const auto& item : artifacts) {
      const std::string name = item.key().toStringRef();
      if (!wanted.empty() && std::find(wanted.begin(), wanted.end(), name) == wanted.end()) continue;
      failures += check_artifact(bundle, name, item.value().toGenericDict(), tolerance);
      ++ran;
    }
    const bool want_retrieval = wanted.empty() ||
                                std::find(wanted.begin(), wanted.end(), "retrieval") != wanted.end();
    if (want_retrieval && top.contains("retrieval")) {
      failures += check_retrieval(bundle, top, tolerance);
      ++ran;
    }
    if (ran == 0 || (!wanted.empty() && ran != static_cast<int>(wanted.size()))) {
      std::cerr << "error: not every requested artifact is in the test vectors\n";
      return 2;
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
  std::cout << (failures ? "FAILED" : "all test vectors pass") << "\n";
  return failures ? 1 : 0;
}
