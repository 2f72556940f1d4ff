"""The Dash web dashboard (create_app)."""
