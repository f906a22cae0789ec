from wantune.cli import main

raise SystemExit(main())
