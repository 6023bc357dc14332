"""Start the tuner web app from a checkout: ``python app.py [--host 127.0.0.1] [--port 7860] [--lang en|zh]``.

The same as ``tuner app`` (tuner/ui/launch.py), which works from any folder once tuner is installed.
"""

import sys

from tuner.ui.launch import main

if __name__ == "__main__":
    sys.exit(main())
