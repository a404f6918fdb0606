from sipmask.cli import main

raise SystemExit(main())
