import sys

from monai_breastlt.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
