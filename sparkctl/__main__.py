from sparkctl.cli import main

raise SystemExit(main())
