"""The power-saving camera demo (issue 8): `snrt-demo` or `python -m demos.camera`.

Frames from a webcam (OpenCV, the optional `camera` extra) or a synthetic camera playing real
images run through an snrt Runtime whose Controller picks the variant between two frames from
battery, power-saving mode, CPU load and temperature; a local web page shows what happens and
lets you toggle power saving, change the target FPS or pin a variant.

Modules: `sources` (cameras), `energy` (battery, simulated sensors and energy model),
`controller_setup` (the controller's latencies, auto FPS), `latency` (measured or simulated
latencies), `pacing` (wall or simulated clock), `engine` (processing loop, status, validated
settings), `server` (HTTP routes), `app` (assembly and CLI), `page.html`.
"""

from .app import DemoApp, DemoOptions, main
from .energy import EnergyModel
from .engine import ConfigError, DemoEngine
from .sources import CameraError, SyntheticCamera, WebcamCamera, open_camera

__all__ = ["CameraError", "ConfigError", "DemoApp", "DemoEngine", "DemoOptions", "EnergyModel",
           "SyntheticCamera", "WebcamCamera", "main", "open_camera"]
