"""Install one optional-dependency group of pyproject.toml (e.g. `lint`) without
reinstalling sparkctl itself: several checkouts may share one virtualenv, and
`pip install -e '.[lint]'` would point its sparkctl at the checkout that ran it."""

import subprocess
import sys
import tomllib

with open("pyproject.toml", "rb") as handle:
    extras = tomllib.load(handle)["project"]["optional-dependencies"]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "-q", *extras[sys.argv[1]]]))
