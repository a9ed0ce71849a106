"""Local processes the product starts itself: a CPU ComfyUI fleet with a tiny model and a Prefect server.

`comfybatch demo` and `comfybatch up --demo` run on them; the test harness (`comfybatch.testing`) builds on them.
"""
