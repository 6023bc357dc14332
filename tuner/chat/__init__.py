"""tuner.chat: generation. The chat session (streaming, history, comparison), templates' stop tokens
(text.py), the one greedy path (generate.greedy_answers: evaluation answers, identity answers, the
merge check), loading an adapter to chat with, the ReAct agent and its tools, the OpenAI-compatible
server."""
