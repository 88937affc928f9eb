"""Demo applications built on snrt (see demos/camera: the power-saving camera app)."""
