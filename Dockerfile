# RunPod / cluster image: CUDA devel PyTorch (DeepSpeed JIT-builds its fused ops with nvcc + ninja), pdsh and
# openssh for multi-node launches, the pinned requirements, and the project code.
#
#   docker build -t ragllm:latest .
#   docker run --gpus all --shm-size 16g -v /path/to/workspace:/workspace ragllm:latest \
#       deepspeed --num_gpus 8 launcher/train.py --config_file configs/base/750M_unified_v1.json \
#       --model_name unified_v1_llama --dataset_dir data/unified_phase1_circuit
#
# The base image's torch must equal the torch pin in requirements.txt (a test checks the tag).
ARG BASE_IMAGE=pytorch/pytorch:2.13.0-cuda12.8-cudnn9-devel
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    RAGLLM_WORKSPACE=/workspace \
    RAGLLM_USER=trainer \
    TORCH_CUDA_ARCH_LIST="8.0;9.0"

RUN apt-get update \
    && apt-get install -y --no-install-recommends pdsh openssh-client openssh-server git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash trainer

WORKDIR /opt/ragllm

# Requirements first so code edits do not reinstall them. torch==2.13.0 is already satisfied by the base image's
# CUDA build (pip keeps it); ninja is for DeepSpeed's JIT op builds.
COPY requirements.txt ./
RUN pip install -r requirements.txt ninja

COPY model/ model/
COPY data/ data/
COPY launcher/ launcher/
COPY ds_configs/ ds_configs/
COPY configs/ configs/
COPY scripts/ scripts/
COPY docker/ docker/
COPY Makefile pyproject.toml README.md ./
RUN chmod +x docker/entrypoint.py && chown -R trainer:trainer /opt/ragllm

# TensorBoard
EXPOSE 6006
VOLUME ["/workspace"]

# The entrypoint starts as root only to create and chown the volume's folders (and sshd for multi-node), then runs
# the command as `trainer` in its own process group and forwards a pod stop (SIGTERM) to every rank.
ENTRYPOINT ["python", "/opt/ragllm/docker/entrypoint.py"]
CMD ["bash"]
