// check_bundle: load an export bundle's TorchScript artifacts with libtorch (no
// Python, no torchrec) and run the bundle's test vectors through them.
//
//   check_bundle BUNDLE_DIR [ARTIFACT ...]
//
// ARTIFACT defaults to every artifact in BUNDLE_DIR/test_vectors.pt (user tower,
// item tower, ranker). test_vectors.pt is a torch.save of
//   {"tolerance": float, "artifacts": {name: {"file": str,
//                                              "inputs": {input: Tensor},
//                                              "output": Tensor}}}
// which torch::jit::pickle_load reads. For each artifact: the output must match
// within the tolerance, and an input of the wrong dtype must be refused with an
// error that names the input. Exit status 0 when all pass, 1 on any mismatch,
// 2 on a usage or loading error.
#include <ATen/Parallel.h>
#include <torch/script.h>

#include <algorithm>
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
