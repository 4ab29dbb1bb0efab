"""``python -m harness.worker --control tcp:HOST:PORT``: one endpoint of split inference (see ``serve``)."""

import logging
import os
import sys

from harness.worker.serve import main

main()
# Data-link threads may still sit in native calls: interpreter finalisation would end them with pthread_exit
# through C++ frames and abort ("terminate called without an active exception", about one run in four, which
# took the topology down). Everything is reported and nothing is left to clean up, so leave at once.
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
