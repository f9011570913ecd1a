from tta_cli.cli import main

main()
