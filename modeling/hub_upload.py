"""`save_pretrained(..., push_to_hub=True)` for VisionBridge folders: upload only once the folder is complete."""

from pathlib import Path

from huggingface_hub import HfApi

# The keyword arguments of transformers' save_pretrained that belong to the upload.
HUB_KWARGS = ("repo_id", "commit_message", "private", "token", "create_pr", "revision", "commit_description")


def pop_hub_kwargs(kwargs: dict) -> dict:
    return {key: kwargs.pop(key) for key in HUB_KWARGS if key in kwargs}


def push_folder(folder: str | Path, repo_id: str | None = None, token=None, private=None, **upload_kwargs) -> str:
    """Create the repo (and the `revision` branch) if needed and upload the whole saved folder in one commit;
    returns the commit URL."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id or Path(folder).name, private=private, exist_ok=True).repo_id
    if upload_kwargs.get("revision") and not upload_kwargs.get("create_pr"):
        api.create_branch(repo_id, branch=upload_kwargs["revision"], exist_ok=True)
    return api.upload_folder(folder_path=folder, repo_id=repo_id, **upload_kwargs)
