from floatlab.cli import main

main()
