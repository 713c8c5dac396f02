from .judges import Judge, JudgeUnavailable, get_judge
