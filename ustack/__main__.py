from ustack.cli import main

raise SystemExit(main())
