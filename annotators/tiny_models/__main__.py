import sys

from annotators.tiny_models import main

sys.exit(main())
