"""ipsecsa.datapath"""
