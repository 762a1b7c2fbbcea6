# Placeholder: the RunPod image (CUDA devel base, pdsh/openssh, pinned requirements, entrypoint) is the
# "Ship it" issue. Until then, run from a clone with `make demo` / `make test`.
FROM python:3.11-slim
WORKDIR /workspace/ragllm
COPY . .
RUN pip install --no-cache-dir -r requirements.txt
