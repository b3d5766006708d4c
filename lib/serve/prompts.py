"""A request's prompts as token ids: chat messages (content parts joined), or completions'
`prompt` in each of its four forms (a string, strings, token ids, lists of token ids).

For a vision-language model, a chat's `image_url` parts are its images: `data:` URLs, or local
paths (`file://` or plain) under the folder lm-serve's --allow-local-images names. A remote URL
is refused: the server fetches nothing. How many images a request may carry, and how many pixels
each, are checked before any is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ..backends.vision_prompts import ImageSource, vision_prompt
from ..chat.prompts import PromptSettings, effective_template, messages_of, prompt_ids
from ..chat.reasoning import opens_thinking
from ..errors import RecordError, UsageError
from ..vision.images import DEFAULT_MAX_PIXELS, ref_kind
from .fields import BadRequest
from .structured import Asked


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    text: str  # what `echo` gives back: the prompt as sent (token ids decoded)
    inputs: Any = None  # a vision-language model's ImagePrompt (lmpipe.engine.multimodal): its images
    thinking: bool = False  # its chat template opened a think block: the answer starts as reasoning


@dataclass(frozen=True)
class ImagePolicy:
    """Where a request's images may come from and how many and how large they may be."""

    local_dir: str | None = None  # --allow-local-images DIR: paths under it; None: data: URLs only
    max_images: int = 8  # --max-images-per-request
    max_pixels: int = DEFAULT_MAX_PIXELS  # --max-pixels: each image's, checked before it is decoded

    def __post_init__(self) -> None:
        if self.max_images < 0:
            raise UsageError("--max-images-per-request must be 0 or more")
        if self.max_pixels < 1:
            raise UsageError("--max-pixels must be at least 1")

    def allows(self, path: str) -> bool:
        """A path (a file:// URL's or plain) inside local_dir once links are followed."""
        if self.local_dir is None:
            return False
        if path.partition(":")[0].lower() == "file":
            path = unquote(urlparse(path).path)
        return Path(path).expanduser().resolve().is_relative_to(Path(self.local_dir).resolve())


@dataclass(frozen=True)
class ImageRules:
    """A vision-language model's processor, and the server's rules for images."""

    processor: Any
    policy: ImagePolicy = ImagePolicy()


REMOTE = ("`{where}`: a remote image URL; send the image inline as a data: URL "
          "(data:image/png;base64,...): the server fetches nothing")
LOCAL = ("`{where}`: a local image path, refused: send the image inline as a data: URL, "
         "or start lm-serve with --allow-local-images DIR")
OUTSIDE = "`{where}`: a local image path outside the folder lm-serve's --allow-local-images allows"


def image_urls(messages: Any) -> list[tuple[str, str]]:
    """Each image_url part's (where, url), checked against the rules before any is read."""
    found = []
    for i, m in enumerate(messages if isinstance(messages, list) else []):
        content = m.get("content") if isinstance(m, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else []):
            if isinstance(part, dict) and part.get("type") == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                where = f"messages[{i}].content[{j}].image_url.url"
                if not isinstance(url, str) or not url:
                    raise BadRequest(f"`{where}` must be a string", "invalid_messages")
                found.append((where, url))
    return found


def vision_chat_prompt(rules: ImageRules, body: dict[str, Any], asked: Asked, template: PromptSettings) -> Prompt:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list", "invalid_type")
    policy = rules.policy
    urls = image_urls(messages)
    if len(urls) > policy.max_images:  # before any is read or decoded
        raise BadRequest(f"{len(urls)} images in one request; at most {policy.max_images} "
                         "(lm-serve --max-images-per-request)", "too_many_images")
    for where, url in urls:
        kind = ref_kind(url.strip())
        if kind == "remote":
            raise BadRequest(REMOTE.format(where=where), "invalid_image_url")
        if kind == "path" and policy.local_dir is None:
            raise BadRequest(LOCAL.format(where=where), "invalid_image_url")
        if kind == "path" and not policy.allows(url.strip()):
            raise BadRequest(OUTSIDE.format(where=where), "invalid_image_url")
    try:
        image = vision_prompt({"messages": messages}, rules.processor, replace(template, prefix=asked.prefix),
                              ImageSource(max_pixels=policy.max_pixels, allow_paths=policy.local_dir is not None),
                              asked.plan.tools)
    except RecordError as exc:
        raise BadRequest(str(exc), "invalid_messages") from None
    return Prompt(image.ids, "", image)


def message_text(content: Any, where: str) -> str:
    """A message's content as one string: text parts joined by newlines, as vLLM joins them.
    Other parts (images, audio) are refused by name: this server reads text."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise BadRequest(f"`{where}.content` must be a string or a list of content parts", "invalid_messages")
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text":
            raise BadRequest(f"`{where}.content[{i}]`: content part type {kind!r} is not supported (text only)",
                             "unsupported_parameter")
        if not isinstance(part.get("text"), str):
            raise BadRequest(f"`{where}.content[{i}].text` must be a string", "invalid_messages")
        texts.append(part["text"])
    return "\n".join(texts)


def plain_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list", "invalid_type")
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, dict) and "content" in m:
            m = {**m, "content": message_text(m["content"], f"messages[{i}]")}
        out.append(m)
    return out


def chat_prompt(tokenizer: Any, body: dict[str, Any], asked: Asked, images: ImageRules | None = None,
                template: PromptSettings = PromptSettings()) -> Prompt:
    """`images`: the model takes images (every chat prompt then goes through its processor).
    `template`: how the chat template renders (lm-serve's --chat-template, the request's
    chat_template_kwargs and reasoning_effort)."""
    if images is not None:
        return vision_chat_prompt(images, body, asked, template)
    messages = plain_messages(body.get("messages"))
    tools = asked.plan.tools
    try:
        if effective_template(tokenizer, template) is not None:
            ids = prompt_ids({"messages": messages}, tokenizer, replace(template, prefix=asked.prefix), tools)
            return Prompt(ids, "", thinking=not asked.prefix and opens_thinking(tokenizer.decode(ids[-8:])))
        # No chat template: the tools' own rule, an optional system line and one user text.
        messages_of({"messages": messages}, PromptSettings())
        roles = [m["role"] for m in messages]
        if roles not in (["user"], ["system", "user"]):
            raise BadRequest("this model has no chat template: send one user message (and a system one)")
        system = messages[0]["content"] if roles[0] == "system" else None
        settings = PromptSettings(system=system, raw=True, prefix=asked.prefix)
        return Prompt(prompt_ids({"text": messages[-1]["content"]}, tokenizer, settings, tools), "")
    except RecordError as exc:
        raise BadRequest(str(exc), "invalid_messages") from None


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(i, int) and not isinstance(i, bool)
                                                          for i in value)


def completion_prompts(tokenizer: Any, body: dict[str, Any], asked: Asked) -> list[Prompt]:
    """Every prompt of the request, in order: choices come back in this order."""
    prompt = body.get("prompt")
    prompts: list[Any]
    if isinstance(prompt, str) or _token_ids(prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and (all(isinstance(p, str) for p in prompt)
                                                  or all(_token_ids(p) for p in prompt)):
        prompts = prompt
    else:
        raise BadRequest("`prompt` must be a string, a list of strings, a list of token ids or a list of lists "
                         "of token ids", "invalid_type")
    return [_one(tokenizer, p, asked) for p in prompts]


def _one(tokenizer: Any, prompt: str | list[int], asked: Asked) -> Prompt:
    if isinstance(prompt, str):  # as lm-generate --raw: tool instructions first, the prefix last
        ids = prompt_ids({"text": prompt}, tokenizer, PromptSettings(raw=True, prefix=asked.prefix), asked.plan.tools)
        return Prompt(ids, prompt)
    if max(prompt) >= len(tokenizer) or min(prompt) < 0:
        raise BadRequest("`prompt` token ids out of the vocabulary", "invalid_value")
    if asked.prefix or asked.plan.tools:
        raise BadRequest("`prefix` and `tools` need a text prompt", "unsupported_parameter")
    return Prompt(list(prompt), tokenizer.decode(prompt))
