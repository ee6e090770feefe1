"""``python -m lepton_vision`` runs the command line."""

from lepton_vision.cli import main

raise SystemExit(main())
