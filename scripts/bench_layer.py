"""Layer benchmark (conv vs AR layer vs released algorithm); see ``arma_plugin.benchmark``."""
import sys

from arma_plugin.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
