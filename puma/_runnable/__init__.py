"""_runnable"""
