import sys

from aiwm_agentd.cli import main

sys.exit(main())
