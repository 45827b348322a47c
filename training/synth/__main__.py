import sys

from training.synth.dataset import main

sys.exit(main())
