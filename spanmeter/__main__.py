from spanmeter.cli import main

raise SystemExit(main())
