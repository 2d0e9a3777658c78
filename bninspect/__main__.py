from bninspect.cli.main import main

main()
