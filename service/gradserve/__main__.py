"""`python -m gradserve ...` is `gradserve ...`."""

from gradserve.cli import main

main()
