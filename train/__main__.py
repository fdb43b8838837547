import sys

from train.main import main

if __name__ == "__main__":  # not when a spawned worker (the train feed's) imports this module
    sys.exit(main())
