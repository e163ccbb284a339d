"""HTTP routes: parse, call one service function, answer."""
