from prismops.cli import main

main()
