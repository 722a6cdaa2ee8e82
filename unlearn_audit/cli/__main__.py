from . import main

if __name__ == "__main__":  # vLLM spawns processes that import this module again
    main()
