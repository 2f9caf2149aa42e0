"""The command line's commands, one module each: argument handling only, the work is in the engine's modules.

    run (default)   engine/commands/run.py        → engine/app.py (build_parts, summarize), engine/pipeline.py
    enroll          engine/commands/enroll.py     → engine/enroll.py, engine/bundles.py
    bench           engine/commands/bench.py      → engine/bench.py
    report          engine/commands/report.py     → engine/report.py
    eval            engine/commands/evaluate.py   → engine/evaluate.py, engine/eval_synthetic.py
    model-info      engine/commands/model_info.py → engine/face_model.py
    view            engine/commands/view.py       → engine/stream/viewer.py
    relay, keys     engine/commands/relay.py, keys.py → engine/stream/relay.py, engine/stream/security.py
    render          engine/commands/render.py     → engine/render/stills.py

Each module has one `add_*_command(sub)` that registers its parser and handler `(args, config) -> exit code`.
"""
