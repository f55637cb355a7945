from policysearch.cli import main

main()
