import sys

from famjax.train.main import main

sys.exit(main())
