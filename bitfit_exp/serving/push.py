"""Upload an exported folder to the Hugging Face Hub (`bitfit-export ... --push-to-hub REPO_ID`): the repository is
created private unless asked otherwise (or reused when it exists), with the token from the usual place (`HF_TOKEN`,
or `hf auth login`'s stored one).

>>> check_repo_id("me/minilm-sst2-bitfit")
>>> check_repo_id("me/minilm sst2")
Traceback (most recent call last):
bitfit_exp.core.errors.UserError: --push-to-hub me/minilm sst2: not a Hub repository id ...
"""

from pathlib import Path

from bitfit_exp.core.errors import UserError, first_line
from bitfit_exp.core.offline import is_offline


def check_repo_id(repo_id: str) -> None:
    """A one-line UserError unless `repo_id` is a valid model repository id (`name` or `namespace/name`): checked
    before anything is exported."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UserError(f"--push-to-hub {repo_id}: not a Hub repository id ({first_line(e)}); use "
                        f"NAMESPACE/NAME, e.g. your-name/minilm-sst2-bitfit") from None


def later(folder: Path, repo_id: str) -> str:
    return f"the folder {folder} was written; upload it later with `hf upload {repo_id} {folder} .`"


def push_folder(folder: Path, repo_id: str, private: bool = True) -> str:
    """Create (or reuse) `repo_id` and upload `folder` to it in one commit; returns the commit's URL. A one-line
    UserError, naming the written folder, when offline or when the Hub refuses (no token, no access)."""
    if is_offline():
        raise UserError(f"pushing to the Hub needs the network, and HF_HUB_OFFLINE is set; {later(folder, repo_id)}")
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                                   commit_message=f"bitfit-export: {Path(folder).name}")
    except Exception as e:  # the Hub's errors come from its HTTP client, its auth and its own classes alike
        raise UserError(f"pushing to {repo_id} failed ({first_line(e)}); {later(folder, repo_id)}") from None
    return str(getattr(commit, "commit_url", None) or commit)
