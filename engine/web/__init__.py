"""The avatar in a web browser (`scapecast serve`, `run --web`): assets, shader conversion, server, page."""
