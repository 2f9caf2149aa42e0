"""Rendering: `renderer.AvatarRenderer` wires the GL context (`context`), the seam-split mesh (`mesh`), the
camera (`camera`) and the shaders in `shaders/`; `outputs` writes and shows images; `bench` measures."""
