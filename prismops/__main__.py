from prismops.cli import main

if __name__ == "__main__":  # a spawned child process (bench route's clients) imports this module again
    main()
