"""nerfstudio runs as sources of grids: the frame between a capture's world and a run's
normalised frame (:mod:`.frames`), a run's field seen from the world (:mod:`.field`), and
finding and loading a run (:mod:`.run`). Nothing here imports nerfstudio at import time:
the main environment never needs it; loading a run does (``make nerfstudio``)."""
