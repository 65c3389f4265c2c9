# GPU image: CUDA runtime, torch 2.13.0 (CUDA build), the real fbgemm-gpu built for
# it, torchrec, and this package. bf16 training: `ranking-train trainer=gpu`.
#   docker build -t ranking:gpu .
#   docker run --gpus all -v $PWD/runs:/app/runs ranking:gpu ranking-train trainer=gpu
# The CPU install (pyproject.toml) uses a stand-in `fbgemm-gpu` that pulls
# fbgemm-gpu-cpu; here the real CUDA package is installed first and the project is
# installed without dependencies, so the stand-in never enters the image.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends \
        software-properties-common git build-essential \
    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Same versions as pyproject.toml, with the CUDA builds of torch and fbgemm.
RUN pip install torch==2.13.0 fbgemm-gpu==1.8.0 torchrec==1.8.0 \
    "pytorch-lightning>=2.6,<2.7" "hydra-core>=1.3,<1.4" "mlflow>=3,<4" \
    "pyarrow>=15" "numpy>=1.26" "faiss-cpu>=1.8" "pyyaml>=6"

WORKDIR /app
COPY . /app
RUN pip install --no-deps -e /app \
    && python -c "import torch, fbgemm_gpu, torchrec; print(torch.__version__, torch.version.cuda)"
CMD ["ranking-train", "trainer=gpu"]
