"""comfybatch: a batch image factory over ComfyUI servers, on Prefect."""
