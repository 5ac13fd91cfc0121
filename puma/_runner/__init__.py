"""_runner"""
