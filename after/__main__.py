from after.cli import main

main()
