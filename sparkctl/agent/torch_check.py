"""Whether torch imports in an interpreter and which devices it sees: run by
nccl-probe as `python -c <this source>` through the agent's exec operation
(ExecRequest.program), before ranks are started. Prints one JSON line."""

import json


def main():
    import torch

    cuda = torch.cuda.is_available()
    print(json.dumps({"torch": torch.__version__, "cuda": cuda, "gpus": torch.cuda.device_count() if cuda else 0}))


if __name__ == "__main__":
    main()
