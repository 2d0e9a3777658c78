from bninspect.cli.entry import main

main()
