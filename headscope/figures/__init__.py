"""Pure (result) -> plotly Figure builders shared by the dashboard, reports and notebooks."""
