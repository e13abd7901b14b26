from medsum.cli import main

raise SystemExit(main())
