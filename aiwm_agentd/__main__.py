from aiwm_agentd.cli import main
import sys
sys.exit(main())
