"""Development tools of the pack, not part of what ComfyUI loads: a real headless ComfyUI for tests and
the demo (comfy_server, comfy_http, comfy_env), the headless client, the demo, the example-workflow
builder, and the fixtures that tests, benchmarks and the demo share (tiny models, release-format
files, generated assets). Run them from the pack's folder as modules, e.g. ``python -m tools.demo``
(``tools/client.py`` also runs as a plain script).
"""
