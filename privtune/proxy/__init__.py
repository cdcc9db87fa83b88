"""``privtune proxy``: a local OpenAI-compatible endpoint for one privately fine-tuned model.

It runs on the data owner's device; an application written for the official ``openai`` client uses
the model by changing only its base URL (``OpenAI(base_url="http://127.0.0.1:8001/v1", api_key="-")``).
The private part (bottom model, privacy mechanism, round trips to the service, device tail) is the
model object's (``client_sdk.FineTunedModel``); this package is the HTTP layer around it.

Routes: ``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/chat/completions``, ``POST /v1/completions``
(both with ``stream=true`` server-sent events and ``stream_options.include_usage``).

Behaviour, where it is ours to choose:

- ``model`` must be the served id exactly; any other is a 404 ``model_not_found`` (param ``model``).
- Sampling: ``max_tokens`` (chat: ``max_completion_tokens`` wins over it; unset: the model's default;
  completions: 16, OpenAI's default), ``temperature`` [0, 2], ``top_p`` (0, 1], ``stop`` (a string or up
  to 4), ``seed``. ``n`` other than 1 is a 400 (param ``n``).
- Options that would change the answer's shape and cannot be honoured are refused with a 400 naming
  them: chat ``tools``/``functions``, ``logprobs``/``top_logprobs``, ``audio``, a non-text
  ``response_format``; completions ``logprobs``, ``echo``, ``suffix``, ``best_of`` > 1, more than one
  prompt. Options that only tune sampling (``presence_penalty``, ``frequency_penalty``, ``logit_bias``,
  ``user``, ``metadata``, ...) and unknown fields are ignored, as OpenAI ignores unknown fields.
- Chat messages: roles ``system``, ``developer`` (sent as ``system``), ``user``, ``assistant``; content a
  string or text parts (an image part is a 400). ``tool`` messages are a 400 (no tools).
- A classification model answers chat with the label of the **last user message** as the assistant's
  content (completions: the label of the prompt), ``finish_reason`` ``"stop"``; a generation option the
  caller sets (``max_tokens``, ``max_completion_tokens``, ``temperature``, ``top_p``, ``stop``,
  ``seed``) is a 400 naming it, since it cannot apply to a label; ``stream=true`` sends the label as
  one content chunk.
- ``usage`` is the model's ``last_usage`` when it reports one, else tokens counted with its tokenizer
  (words without one). ``finish_reason`` is its ``last_finish_reason`` (``"stop"`` when absent).
- Errors are OpenAI envelopes ``{"error": {"message", "type", "param", "code"}}``: validation 400s name
  the field (``messages[0].content``); the model's ``ValueError`` is a 400 with its ``param`` in the
  request's words; a PrivTune service error keeps its status; the service unreachable is a 502; an
  error after a stream started is an error event (the openai client raises ``APIError``).
- The model object is not thread-safe: requests to it are served one at a time (a stream holds it
  until it ends), each call in a worker thread, so ``/v1/models`` and the event loop stay responsive.
- No authentication unless ``api_key`` is given (``--proxy-api-key``): then ``Authorization: Bearer``
  must carry it (else 401). Binding beyond loopback prints a warning when there is none.
"""

from __future__ import annotations

from privtune.proxy.app import create_app
from privtune.proxy.server import serve

__all__ = ["create_app", "serve"]
