from legatus.server.main import main

raise SystemExit(main())
